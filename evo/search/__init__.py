"""The search: the space of genomes (space), the engines that propose them (engines/), the run
directory (store), and the loop that ties them to the evaluator (loop)."""
