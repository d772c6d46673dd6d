"""Foundations: the data-spec parser, readers (image folders, MNIST, CIFAR, JSON, face pairs), preprocessing."""
