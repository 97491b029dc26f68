FROM docker.io/library/python:3.12-slim@sha256:4c0a8c9b1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d
RUN mkdir -p /safe_data /safe_outputs /scratch && pip install --no-cache-dir nltk==3.9 && python -m nltk.downloader punkt
USER 1000
# The build fetched punkt, but this asks the network again at every start.
CMD ["python", "-c", "import nltk; nltk.download('stopwords'); print('ready')"]
