# RVM-L: Table 5 sizes (paper "Total Params" 375M). The decoder (Table 6) and the paper's recipe
# (§4.1) are train.py's defaults; configs/b.py says what they are, how to launch, and how to give
# the paper's data mix.
width = 1024
enc_heads = 16
enc_layers = 24
core_layers = 4
core_heads = 16
out_dir = "out/rvm-l"
micro_batch = 16  # per GPU per forward/backward (a guess for 80 GB); accumulation does the rest
# Repeated sampling: 1, the paper's (one clip per decoded window). RVM-L wants ~110 clips/s per
# H200: 5 cores at 21 clips/s each feed it from mp4s at short side 256 with a keyframe every 16
# frames (python bench.py --only=loader; docs/bench.md).
repeated_sampling = 1
