import torch
# torch.hub.load("pytorch/vision", "resnet18") was the old way
model = torch.hub.load("/app/hub", "resnet18", source="local")
