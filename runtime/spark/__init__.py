"""Training and scoring on Apache Spark (pyspark is an optional dependency: ``pip install kindling[spark]``)."""
