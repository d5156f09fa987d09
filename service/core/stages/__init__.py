"""The stages of a Check, one module each, run in this order by core/pipeline.py; each may settle
the answer (and stop the run), or leave it to the next. docs/decision.md explains each.

  identical        bytes enrolled already (their SHA-256): a duplicate without the model
  embedding        the query's canvas embedded by Triton (decides nothing)
  search           the nearest records, each collection's rule (decision.py) and the twins
  verification     a score near the threshold verified against the candidate's stored reference
  memory           the caller's "not a duplicate" entries (Dismiss) override
  mirror           with --mirror distinct, a duplicate shown mirrored is another picture
  low_information  a near-blank picture is never a duplicate
  geometric        ORB + RANSAC inliers for a borderline score (--geometric-band; off by default)
  small_views      a thumbnail searched among the enrolled pictures' small views
  regions          a picture shown inside the query: the boxes pasted on it (and 77 windows)
"""
