"""ferryman.bridge"""
