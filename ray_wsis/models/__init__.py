"""Networks: ResNet backbone, CAM classifier, IRNet and AffinityNet."""
