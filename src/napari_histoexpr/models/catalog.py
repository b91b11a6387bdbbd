"""Names the CLI and the panels offer, without importing torch (a test checks them against the models)."""

BACKBONE_NAMES = ("resnet18", "resnet34", "resnet50", "densenet121", "efficientnet_b0", "efficientnet_b1",
                  "efficientnet_b2", "efficientnet_b3", "efficientnet_b4")
#: ``auto`` = CUDA, then Apple ``mps``, then CPU
DEVICES = ("auto", "cpu", "cuda", "mps")
