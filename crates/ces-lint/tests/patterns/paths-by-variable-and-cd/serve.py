from transformers import pipeline
nlp = pipeline("sentiment-analysis")
