# RVM-B: Table 5 sizes (paper "Total Params" 117M); the decoder is the same for all sizes (Table 6),
# train.py's defaults. Everything else is the paper's recipe, train.py's defaults too (§4.1):
# global batch 2048 for 1M steps (~2B clips) at 256 px, AdamW (0.9, 0.95), weight decay 0.05, lr
# 1.5e-4 * 2048 / 256 after a linear warm-up, cosine decay, bf16 compute on float32 weights, FSDP.
#   python data.py --src=data/videos --dst=data/prepared    # once: the form read fastest
#   torchrun --standalone --nproc_per_node=8 train.py configs/b.py --data=data/prepared
# data: a folder of videos or frame folders, or the paper's mixture (supplement Table 4), e.g.
#   data = [("data/ssv2", 0.056), ("data/kinetics700", 0.188), ("data/howto100m", 0.318),
#           ("data/yt8m", 0.188), ("data/ytbb", 0.250)]
width = 768
enc_heads = 12
enc_layers = 12
core_layers = 4
core_heads = 12
out_dir = "out/rvm-b"
micro_batch = 32  # per GPU per forward/backward (a guess for 80 GB); accumulation does the rest
# Repeated sampling departs from the paper (one clip per decoded window): 2 clips per window.
# RVM-B trains 266 clips/s on one H200; from mp4s at short side 256 with a keyframe every 16
# frames one core makes 21 clips/s at R = 1, 36 at R = 2, so 10 cores feed it at R = 2
# (python bench.py --only=loader; docs/bench.md). data.py's prepared form needs no R > 1.
repeated_sampling = 2
