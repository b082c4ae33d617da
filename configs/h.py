# RVM-H: Table 5 sizes (paper "Total Params" 743M). The decoder (Table 6) and the paper's recipe
# (§4.1) are train.py's defaults; configs/b.py says what they are,
# how to launch, and how to give the paper's data mix.
width = 1280
enc_heads = 16
enc_layers = 32
core_layers = 4
core_heads = 16
out_dir = "out/rvm-h"
micro_batch = 8  # per GPU per forward/backward (a guess for 80 GB); gradient accumulation makes up the rest
# The paper trains RVM-H longer than S/B/L ("4B", supplement §8): e.g. --max_steps=2_000_000 for 4B clips.
