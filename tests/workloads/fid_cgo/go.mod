module fidcgo

go 1.19
