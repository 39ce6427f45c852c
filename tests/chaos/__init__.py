"""The reliability ("chaos") suite: real processes, real servers, faults injected on purpose."""
