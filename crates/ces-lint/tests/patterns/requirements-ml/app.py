import pandas
print("ok")
