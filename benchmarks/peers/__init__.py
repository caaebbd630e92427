"""blendrt against N llama.cpp servers (one per member), for benchmarks/bench_peers.py.

members: the scenarios' members as HF folders and GGUF files; systems: starting, probing and
stopping the servers; client: the multi-turn workload over the OpenAI API, timed per turn.
"""
