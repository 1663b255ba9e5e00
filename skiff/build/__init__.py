"""Building images from a Dockerfile and a build context, as Docker's legacy builder does.

``dockerfile`` parses the Dockerfile (stages, instructions, heredocs, variable expansion),
``ignore`` applies ``.dockerignore`` to the context; the builder runs the steps with a layer cache.
"""
