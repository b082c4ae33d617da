# Real video on a laptop CPU: a small RVM trained on a folder of real videos, scored while it
# trains by its loss on held-out videos and by label propagation on held-out DAVIS videos, beside
# the same model untrained (the paper's Table 1, §4.2). docs/laptop.md holds what was measured; the
# README says where it stands.
#   python train.py configs/laptop.py --data=data/videos --val_data=data/DAVIS/JPEGImages/480p \
#       --labelprop_data=data/DAVIS
#   python eval_labelprop.py --task=davis --data=data/DAVIS --ckpt=out/laptop/ckpt.pt \
#       --resolution 120 216
#   python eval_labelprop.py --task=davis --data=data/DAVIS --untrained=configs/laptop.py \
#       --resolution 120 216
# data/videos: e.g. DAVIS-2017 train's JPEGImages/480p sequences; data/DAVIS: DAVIS-2017 val,
# never trained on.
#
# The probe, kept: 8-pixel patches on 64 px clips (8x8 tokens), width 128, 2.0M parameters
# with the decoder. On one core of the 2-core Xeon a step of 32 clips takes 2.3 s; 1000 steps and
# their evaluations ~45 min.
patch_size = 8
width = 128
enc_layers = 4
enc_heads = 4
core_layers = 2
core_heads = 4
dec_width = 128
dec_layers = 2
dec_heads = 4
base_grid = 8  # the position table is built for training's 8x8 grid, resized for 15x27
image_size = 64
labelprop_resolution = (120, 216)  # a 15x27 grid: DAVIS frames shrunk 4x, ~training's crops
out_dir = "out/laptop"
batch_size = 32
micro_batch = 32
max_steps = 1000
learning_rate = 1e-3  # instead of the 1.5e-4 * batch / 256 rule, which is made for batch 2048
warmup_steps = 50
min_lr = 1e-5
log_interval = 10
eval_interval = 100
ckpt_interval = 100
num_workers = 0  # one core trains; a loader worker pays where a second core is free
dtype = "float32"  # CPUs without bf16 matrix units run bf16 slower than float32
threads = 1
