/// Introspection XML generated from the same declarations that dispatch calls.
enum Introspection {
    static let header = """
        <!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
         "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">

        """

    static let peer = """
          <interface name="org.freedesktop.DBus.Peer">
            <method name="Ping"/>
            <method name="GetMachineId">
              <arg type="s" name="machine_uuid" direction="out"/>
            </method>
          </interface>

        """

    static let introspectable = """
          <interface name="org.freedesktop.DBus.Introspectable">
            <method name="Introspect">
              <arg type="s" name="xml_data" direction="out"/>
            </method>
          </interface>

        """

    static let properties = """
          <interface name="org.freedesktop.DBus.Properties">
            <method name="Get">
              <arg type="s" name="interface_name" direction="in"/>
              <arg type="s" name="property_name" direction="in"/>
              <arg type="v" name="value" direction="out"/>
            </method>
            <method name="GetAll">
              <arg type="s" name="interface_name" direction="in"/>
              <arg type="a{sv}" name="properties" direction="out"/>
            </method>
            <method name="Set">
              <arg type="s" name="interface_name" direction="in"/>
              <arg type="s" name="property_name" direction="in"/>
              <arg type="v" name="value" direction="in"/>
            </method>
            <signal name="PropertiesChanged">
              <arg type="s" name="interface_name"/>
              <arg type="a{sv}" name="changed_properties"/>
              <arg type="as" name="invalidated_properties"/>
            </signal>
          </interface>

        """

    static let objectManager = """
          <interface name="org.freedesktop.DBus.ObjectManager">
            <method name="GetManagedObjects">
              <arg type="a{oa{sa{sv}}}" name="object_paths_interfaces_and_properties" direction="out"/>
            </method>
            <signal name="InterfacesAdded">
              <arg type="o" name="object_path"/>
              <arg type="a{sa{sv}}" name="interfaces_and_properties"/>
            </signal>
            <signal name="InterfacesRemoved">
              <arg type="o" name="object_path"/>
              <arg type="as" name="interfaces"/>
            </signal>
          </interface>

        """

    /// The document for `object` (nil: a node that only has children) with its child nodes.
    static func xml(for object: ExportedObject?, children: [String]) -> String {
        var out = header + "<node>\n"
        out += peer + introspectable
        if let object {
            out += properties
            if object.isObjectManager { out += objectManager }
            for i in object.interfaces { out += xml(for: i) }
        }
        for child in children { out += "  <node name=\"\(escape(child))\"/>\n" }
        out += "</node>\n"
        return out
    }

    /// One `<interface>` element; usable to write the XML files a project ships.
    static func xml(for interface: DBusInterface) -> String {
        var out = "  <interface name=\"\(escape(interface.name))\">\n"
        for m in interface.methods {
            if m.inArgs.isEmpty && m.outArgs.isEmpty {
                out += "    <method name=\"\(escape(m.name))\"/>\n"
                continue
            }
            out += "    <method name=\"\(escape(m.name))\">\n"
            for a in m.inArgs { out += "      <arg type=\"\(escape(a.type.signature))\" name=\"\(escape(a.name))\" direction=\"in\"/>\n" }
            for a in m.outArgs { out += "      <arg type=\"\(escape(a.type.signature))\" name=\"\(escape(a.name))\" direction=\"out\"/>\n" }
            out += "    </method>\n"
        }
        for s in interface.signals {
            if s.args.isEmpty {
                out += "    <signal name=\"\(escape(s.name))\"/>\n"
                continue
            }
            out += "    <signal name=\"\(escape(s.name))\">\n"
            for a in s.args { out += "      <arg type=\"\(escape(a.type.signature))\" name=\"\(escape(a.name))\"/>\n" }
            out += "    </signal>\n"
        }
        for p in interface.properties {
            let access = p.access == .readwrite ? "readwrite" : "read"
            let annotation: String? = switch p.changeSignal {
            case .emits: nil
            case .invalidates: "invalidates"
            case .const: "const"
            case .none: "false"
            }
            let open = "    <property name=\"\(escape(p.name))\" type=\"\(escape(p.type.signature))\" access=\"\(access)\""
            if let annotation {
                out += open + ">\n"
                out += "      <annotation name=\"org.freedesktop.DBus.Property.EmitsChangedSignal\" value=\"\(annotation)\"/>\n"
                out += "    </property>\n"
            } else {
                out += open + "/>\n"
            }
        }
        out += "  </interface>\n"
        return out
    }

    static func escape(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            default: out.append(c)
            }
        }
        return out
    }
}

extension DBusInterface {
    /// This interface as an introspection `<interface>` element.
    public var introspectionXML: String { Introspection.xml(for: self) }
}
