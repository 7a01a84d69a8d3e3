"""jaxrl_lm.models"""
