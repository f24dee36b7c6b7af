"""data_prep/minhash"""
