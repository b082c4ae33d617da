# RVM-S: Table 5 sizes (paper "Total Params" 34M) with the paper's training recipe (§4.1).
# python train.py configs/s.py   |   torchrun --standalone --nproc_per_node=8 train.py configs/s.py
width = 384
enc_heads = 6
enc_layers = 12
core_layers = 4
core_heads = 8
# decoder fixed for all sizes (Table 6): dec_width 512, 8 blocks, 16 heads, MLP 2048 (the defaults)
