"""ferryman.protocols"""
