module github.com/mambabyte/mambabyte

go 1.26
