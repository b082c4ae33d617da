# RVM-L: Table 5 sizes (paper "Total Params" 375M). The decoder (Table 6) and the paper's recipe
# (§4.1) are train.py's defaults; configs/b.py says what they are,
# how to launch, and how to give the paper's data mix.
width = 1024
enc_heads = 16
enc_layers = 24
core_layers = 4
core_heads = 16
out_dir = "out/rvm-l"
micro_batch = 16  # per GPU per forward/backward (a guess for 80 GB); gradient accumulation makes up the rest
