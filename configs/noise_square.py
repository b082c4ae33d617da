# The white-noise square demo (§4.4, Fig. 6) on a laptop CPU: a tiny RVM learns to continue a square of
# noise sliding over a noise background, which it can only do by tracking motion across frames.
#   python train.py configs/noise_square.py     (about 10 minutes on one core; on a busy machine
#   OMP_NUM_THREADS=1 is steadier than two threads fighting over cores)
# The model: a 64x64 frame is 8x8 patches of 8 px; width 64; 2 encoder blocks, 1 core block, 1 decoder block.
patch_size = 8
width = 64
enc_layers = 2
enc_heads = 4
core_layers = 1
core_heads = 4
dec_width = 64
dec_layers = 1
dec_heads = 4
mask_ratio = 0.9  # 6 of 64 target patches stay visible (0.95 would leave 3)

# data: the stimulus generated on the fly (data.py), no files needed
data = "noise_square"
image_size = 64
num_workers = 0  # clips are made in the training process: 0.3 ms each

# training
out_dir = "out/noise_square"
batch_size = 16
micro_batch = 16
max_steps = 3000
learning_rate = 1e-3  # instead of the 1.5e-4 * batch / 256 rule, which is made for batch 2048
warmup_steps = 200
min_lr = 1e-5
log_interval = 10
eval_interval = 250
ckpt_interval = 500
dtype = "float32"  # CPUs without bf16 matrix units run bf16 slower than float32
sharding = "none"
