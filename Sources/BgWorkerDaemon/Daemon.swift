import BgWorkerCore
import DBus
