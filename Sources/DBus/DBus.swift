// The D-Bus layer on libdbus. See Connection.swift.
import CDBus
