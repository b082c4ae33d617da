# RVM-H: Table 5 sizes (paper "Total Params" 743M) with the paper's training recipe (§4.1).
# python train.py configs/h.py   |   torchrun --standalone --nproc_per_node=8 train.py configs/h.py
width = 1280
enc_heads = 16
enc_layers = 32
core_layers = 4
core_heads = 16
# decoder fixed for all sizes (Table 6): dec_width 512, 8 blocks, 16 heads, MLP 2048 (the defaults)
