"""jaxrl_lm.train"""
