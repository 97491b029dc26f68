import easyocr

easyocr.Reader(["en"])
