"""Training: heads fine-tuned on a frozen backbone (clean, or IKL + PGD) and zoo backbones from scratch.

- :mod:`.finetune`  clean fine-tuning on cached features; IKL adversarial fine-tuning, resumable
- :mod:`.scratch`   CIFAR ResNets from scratch: standard or FGSM-RS training, resumable per epoch
- :mod:`.losses`    IKL (Cui et al. 2024)
- :mod:`.pgd`       the l_inf PGD loop the training attacks share
"""
from .finetune import (
                       AdversarialConfig,
                       CleanConfig,
                       extract_features,
                       finetune_adversarial,
                       finetune_clean,
                       fit_prototypes,
                       pgd_ikl,
)

__all__ = ["AdversarialConfig", "CleanConfig", "extract_features", "finetune_adversarial", "finetune_clean",
           "fit_prototypes", "pgd_ikl"]
