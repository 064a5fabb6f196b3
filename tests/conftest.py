"""Shared fixtures. Tests run with one torch thread: tiny ops on 2 cores lose more to the thread pool than they gain."""

import pytest
import torch

from mmtune.model.tokenizer import save_tokenizer, train_tokenizer
from tests.tiny import CORPUS


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(train_tokenizer(CORPUS, vocab_size=300), folder)
    return str(folder)
