# The white-noise square demo (§4.4, Fig. 6) on a laptop CPU: a tiny RVM trained from scratch on
# the stimulus itself, a square of noise sliding over a static noise background, so that continuing
# the square into the target frames pays only if the state tracks motion.
#   python train.py                 (no arguments runs this file; ~15 minutes on one core)
#   python visualize.py --demo noise_square --ckpt out/noise_square/ckpt.pt
# This is the best recipe found so far, and it does NOT reach the demo's bar (core-feature IoU >= 0.8
# with encoder-only <= 0.3): see the README's "The white-noise square" for what was measured and why.
#
# The model: 16x16 frames are 8x8 patches of 2x2 px. A token must be wider than its patch's
# 3 * P * P values to copy noise forward, which is the first thing the model has to learn: at
# patch 8 and width 64-128 the loss never left the predict-grey floor (1/12).
patch_size = 2
width = 64
enc_layers = 2
enc_heads = 4
core_layers = 1
core_heads = 4
dec_width = 64
dec_layers = 1
dec_heads = 4
mask_ratio = 0.75  # 16 of 64 target patches visible: at 0.95 only 3 would be
base_grid = 8  # the training grid: the position table is never resized at the demo's 16x16

# data: the stimulus generated on the fly (data.py), random square sizes, speeds and directions;
# short gaps so that where the square went is still predictable from the source frames
data = "noise_square:square=4-10,speed=0.5-2,direction=right|left|up|down"
image_size = 16
gap_min = 1
gap_max = 8
window = 13  # 4 source frames + up to 8 frames of gap + 1
num_workers = 0  # clips are made in the training process in well under a millisecond

# training
out_dir = "out/noise_square"
batch_size = 16
micro_batch = 16
max_steps = 5000
learning_rate = 1.5e-3  # instead of the 1.5e-4 * batch / 256 rule, which is made for batch 2048
warmup_steps = 200
min_lr = 1e-5
log_interval = 50
eval_interval = 1000
ckpt_interval = 1000
dtype = "float32"  # CPUs without bf16 matrix units run bf16 slower than float32
sharding = "none"
threads = 1  # a model this small runs fastest on one thread
