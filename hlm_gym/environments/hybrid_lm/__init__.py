"""environments/hybrid_lm"""
