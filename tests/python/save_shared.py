"""Writes a torch.save file in which one dict and one list are referenced
twice (Python's pickler stores them once and refers back through its memo).

usage: save_shared.py OUT
"""
import sys

import torch

shared_dict = {"x": torch.arange(3, dtype=torch.float32)}
shared_list = [1, 2, 3]
torch.save({"a": shared_dict, "b": shared_dict, "l1": shared_list, "l2": shared_list}, sys.argv[1])
