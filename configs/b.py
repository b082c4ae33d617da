# RVM-B: Table 5 sizes (paper "Total Params" 117M) with the paper's training recipe (§4.1).
# python train.py configs/b.py   |   torchrun --standalone --nproc_per_node=8 train.py configs/b.py
width = 768
enc_heads = 12
enc_layers = 12
core_layers = 4
core_heads = 12
# decoder fixed for all sizes (Table 6): dec_width 512, 8 blocks, 16 heads, MLP 2048 (the defaults)

# Training (§4.1): global batch 2048 for 1M steps (about 2B clips) at 256 px, AdamW (0.9, 0.95),
# weight decay 0.05, lr 1.5e-4 * 2048 / 256 = 1.2e-3 after a linear warm-up, cosine decay, bf16
# compute with float32 weights, FSDP. Gradient accumulation makes up whatever the GPUs cannot hold.
out_dir = "out/rvm-b"
batch_size = 2048
micro_batch = 32  # per GPU per forward/backward: a guess for 80 GB; lower it on out-of-memory
max_steps = 1_000_000
warmup_steps = 10_000
image_size = 256
dtype = "bfloat16"
sharding = "fsdp"
num_workers = 8  # decoding processes per GPU
# Data: set this to your videos (a folder of video files or frame folders). train.py stops with a
# clear message while the folder does not exist.
data = "data/videos"
# The paper's mixture (supplement Table 4); the folder names are placeholders for your copies:
# data = [("data/ssv2", 0.056), ("data/kinetics700", 0.188), ("data/howto100m", 0.318),
#         ("data/yt8m", 0.188), ("data/ytbb", 0.250)]
