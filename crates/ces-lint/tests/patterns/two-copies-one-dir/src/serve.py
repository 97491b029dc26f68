import nltk
# nltk.download("old") is a comment
nltk.download("punkt")
