"""Who is connected where: in-process for one node, Redis for many."""
