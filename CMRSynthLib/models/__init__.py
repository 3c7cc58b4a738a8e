"""Networks and conditioning (MONAI building blocks): the conditional UNet and the KL autoencoder."""
