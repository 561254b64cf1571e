"""lidvae_nb: posterior collapse as latent non-identifiability, and latent-identifiable VAEs."""

__version__ = "0.1.0"
