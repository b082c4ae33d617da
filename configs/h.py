# RVM-H: Table 5 sizes (paper "Total Params" 743M). The decoder (Table 6) and the paper's recipe
# (§4.1) are train.py's defaults; configs/b.py says what they are, how to launch, and how to give
# the paper's data mix.
width = 1280
enc_heads = 16
enc_layers = 32
core_layers = 4
core_heads = 16
out_dir = "out/rvm-h"
micro_batch = 8  # per GPU per forward/backward (a guess for 80 GB); accumulation does the rest
# The paper trains RVM-H longer than S/B/L ("4B", supplement §8): --max_steps=2_000_000, 4B clips.
# Repeated sampling: 1, the paper's (one clip per decoded window). RVM-H wants ~60 clips/s per
# H200: 3 cores feed it from mp4s at short side 256 with a keyframe every 16 frames (python
# bench.py --only=loader; docs/bench.md).
repeated_sampling = 1
