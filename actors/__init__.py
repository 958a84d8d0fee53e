"""ferryman.actors"""
