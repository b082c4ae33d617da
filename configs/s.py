# RVM-S: Table 5 sizes (paper "Total Params" 34M). The decoder (Table 6) and the paper's recipe
# (§4.1) are train.py's defaults; configs/b.py says what they are,
# how to launch, and how to give the paper's data mix.
width = 384
enc_heads = 6
enc_layers = 12
core_layers = 4
core_heads = 8
out_dir = "out/rvm-s"
micro_batch = 64  # per GPU per forward/backward (a guess for 80 GB); gradient accumulation makes up the rest
