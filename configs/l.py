# RVM-L: Table 5 sizes (paper "Total Params" 375M) with the paper's training recipe (§4.1).
# python train.py configs/l.py   |   torchrun --standalone --nproc_per_node=8 train.py configs/l.py
width = 1024
enc_heads = 16
enc_layers = 24
core_layers = 4
core_heads = 16
# decoder fixed for all sizes (Table 6): dec_width 512, 8 blocks, 16 heads, MLP 2048 (the defaults)
