"""vclr_jax: VCLR self-supervised video representation learning in JAX/Flax."""
