"""Paged attention and K/V store on the CPU: launchers of the C++ core's kernels
(csrc/cpu/), and the CPU backend that uses them."""
