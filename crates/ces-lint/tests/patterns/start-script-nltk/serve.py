import nltk

nltk.download("stopwords")
print("serving")
