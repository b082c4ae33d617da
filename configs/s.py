# RVM-S: Table 5 sizes (paper "Total Params" 34M) are model.RVMConfig's defaults, so none is set
# here. The decoder (Table 6) and the paper's recipe (§4.1) are train.py's defaults; configs/b.py
# says what they are, how to launch, and how to give the paper's data mix.
out_dir = "out/rvm-s"
micro_batch = 64  # per GPU per forward/backward (a guess for 80 GB); accumulation does the rest
# Repeated sampling departs from the paper (one clip per decoded window): 4 clips per window.
# RVM-S trains ~550 clips/s on one H200; from mp4s at short side 256 with a keyframe every 16
# frames one core makes 21 clips/s at R = 1, 61 at R = 4: 9 cores feed a GPU, not 26
# (python bench.py --only=loader; docs/bench.md). data.py's prepared form: 76 clips/s at R = 1.
repeated_sampling = 4
