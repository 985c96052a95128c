"""The built-in world: a procedurally generated set of facts and tasks with a gold truth.

  templates.py  every value set and phrasing (rendering and judging both read it)
  facts.py      World: people with a town, job, favorite color, pet, food (JSON on disk)
  tasks.py      prompts <-> tasks (fact, sum, harmful, benign), ideal and flawed responses
  render.py     corpus documents, demonstrations, RL / eval prompts, fact clozes, response pools
  gold.py       GoldScorer: the true reward of a response (best 1.0)
  labeler.py    SimulatedLabeler: gold + noise rankings, noise calibrated to a target agreement; label_pools

chatforge/stages/world.py (`chatforge world`) writes all of the above to disk.
"""
