# RVM-B: Table 5 sizes (paper "Total Params" 117M) with the paper's training recipe (§4.1).
# python train.py configs/b.py   |   torchrun --standalone --nproc_per_node=8 train.py configs/b.py
width = 768
enc_heads = 12
enc_layers = 12
core_layers = 4
core_heads = 12
# decoder fixed for all sizes (Table 6): dec_width 512, 8 blocks, 16 heads, MLP 2048 (the defaults)
