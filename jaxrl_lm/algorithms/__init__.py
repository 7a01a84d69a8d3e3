"""jaxrl_lm.algorithms"""
