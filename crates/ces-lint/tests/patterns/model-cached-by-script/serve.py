import easyocr

reader = easyocr.Reader(["en"])
print(reader.readtext("/safe_data/scan.png"))
