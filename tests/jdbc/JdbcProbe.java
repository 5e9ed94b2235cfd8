import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.ParameterMetaData;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Timestamp;
import java.sql.Types;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Calendar;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TimeZone;
import java.util.TreeMap;

/**
 * A JDBC client of trendflow's Flight SQL service through the Apache Arrow Flight SQL JDBC
 * driver, calling what DBeaver calls: the DatabaseMetaData browse calls and properties, plain
 * statements, prepared statements with parameters. Prints one JSON object per line on stdout
 * for tests/python/test_jdbc.py to compare with ADBC; the test decides what is right.
 *
 * <p>Usage: {@code java JdbcProbe URL ACTION ARGS...}; the user and password, when set, come
 * from TRENDFLOW_JDBC_USER / TRENDFLOW_JDBC_PASSWORD and are passed as connection properties,
 * as DBeaver passes them. Actions:
 *
 * <ul>
 *   <li>{@code browse}: the metadata calls, one line each, then {@code sweep}: every
 *       DatabaseMetaData property a tool reads on connect, with the calls that threw;
 *   <li>{@code query SQL...}: each statement through {@link Statement}, with its column labels,
 *       JDBC type names and rows;
 *   <li>{@code prepared SQL PARAM...}: one prepared statement executed once per parameter
 *       ({@code int:4}, {@code long:4}, {@code double:1.5}, {@code str:text});
 *   <li>{@code refused SQL...}: each statement must fail; prints the driver's message;
 *   <li>{@code cancel SQL FOLLOW_UP}: cancels SQL after its first row, then times FOLLOW_UP.
 * </ul>
 *
 * <p>A failure to connect, or of a call that should succeed, prints {@code {"error": ...}} and exits
 * with status 2; a failure to close the connection prints {@code {"close_error": ...}}, status 3.
 */
public final class JdbcProbe {
    private static final Calendar UTC = Calendar.getInstance(TimeZone.getTimeZone("UTC"));

    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: JdbcProbe URL browse|query|prepared|refused|cancel ARGS...");
            System.exit(64);
        }
        List<String> rest = Arrays.asList(args).subList(2, args.length);
        Connection c = null;
        try {
            // The driver connects lazily: a wrong password fails here, an untrusted certificate at the first call.
            c = DriverManager.getConnection(args[0], credentials());
            switch (args[1]) {
                case "browse" -> browse(c);
                case "query" -> query(c, rest);
                case "prepared" -> prepared(c, rest.get(0), rest.subList(1, rest.size()));
                case "refused" -> refused(c, rest);
                case "cancel" -> cancel(c, rest.get(0), rest.get(1));
                default -> throw new IllegalArgumentException("unknown action " + args[1]);
            }
        } catch (SQLException e) {
            System.out.println(object("error", message(e)));
            System.exit(2);
        }
        try {
            c.close();
        } catch (SQLException | RuntimeException e) {
            System.out.println(object("close_error", message(e)));
            System.exit(3);
        }
        System.out.flush();
    }

    /** The user and password as connection properties, the way DBeaver's connection dialog passes them. */
    private static Properties credentials() {
        Properties properties = new Properties();
        String user = System.getenv("TRENDFLOW_JDBC_USER");
        String password = System.getenv("TRENDFLOW_JDBC_PASSWORD");
        if (user != null) {
            properties.setProperty("user", user);
        }
        if (password != null) {
            properties.setProperty("password", password);
        }
        return properties;
    }

    private static void browse(Connection c) throws SQLException {
        DatabaseMetaData meta = c.getMetaData();
        emit("getCatalogs", meta.getCatalogs());
        emit("getSchemas", meta.getSchemas());
        emit("getSchemas(trendflow,v%)", meta.getSchemas("trendflow", "v%"));
        emit("getTableTypes", meta.getTableTypes());
        emit("getTables", meta.getTables(null, null, "%", null));
        emit("getTables(views,VIEW)", meta.getTables("trendflow", "views", "%", new String[] {"VIEW"}));
        emit("getColumns(views)", meta.getColumns("trendflow", "views", "%", "%"));
        emit("getColumns(price_levels,%price)", meta.getColumns(null, "views", "price_levels", "%price"));
        for (String table : tables(meta, "views")) {
            emit("getPrimaryKeys(" + table + ")", meta.getPrimaryKeys("trendflow", "views", table));
            emit("getImportedKeys(" + table + ")", meta.getImportedKeys("trendflow", "views", table));
            emit("getExportedKeys(" + table + ")", meta.getExportedKeys("trendflow", "views", table));
        }
        emit("getCrossReference", meta.getCrossReference("trendflow", "reference", "categories", "trendflow", "views", "category_distribution"));
        emit("getTypeInfo", meta.getTypeInfo());
        sweep(meta);
        connectionProperties(c);
    }

    private static List<String> tables(DatabaseMetaData meta, String schema) throws SQLException {
        List<String> names = new ArrayList<>();
        try (ResultSet rs = meta.getTables("trendflow", schema, "%", null)) {
            while (rs.next()) {
                names.add(rs.getString("TABLE_NAME"));
            }
        }
        return names;
    }

    /**
     * Every argument-less DatabaseMetaData call (DBeaver reads these when it connects and when it
     * builds its SQL dialect), plus the few with an enum argument; the calls that threw are
     * listed with their error, so a missing SqlInfo value shows by name.
     */
    private static void sweep(DatabaseMetaData meta) throws SQLException {
        Map<String, Object> values = new TreeMap<>();
        Map<String, Object> errors = new TreeMap<>();
        for (Method method : DatabaseMetaData.class.getMethods()) {
            if (method.getParameterCount() != 0 || Modifier.isStatic(method.getModifiers())
                    || method.getName().equals("getConnection")) {
                continue;
            }
            try {
                Object value = method.invoke(meta);
                values.put(method.getName(), value instanceof ResultSet rs ? "rows:" + count(rs) : value);
            } catch (InvocationTargetException e) {
                errors.put(method.getName(), message(e.getCause()));
            } catch (ReflectiveOperationException e) {
                errors.put(method.getName(), e.toString());
            }
        }
        try {
            values.put("supportsResultSetType(FORWARD_ONLY)", meta.supportsResultSetType(ResultSet.TYPE_FORWARD_ONLY));
            values.put("supportsTransactionIsolationLevel(NONE)", meta.supportsTransactionIsolationLevel(Connection.TRANSACTION_NONE));
            values.put("supportsConvert(INTEGER,BIGINT)", meta.supportsConvert(Types.INTEGER, Types.BIGINT));
            values.put("supportsConvert(VARCHAR,TIMESTAMP)", meta.supportsConvert(Types.VARCHAR, Types.TIMESTAMP));
            values.put("supportsConvert(TIMESTAMP,INTEGER)", meta.supportsConvert(Types.TIMESTAMP, Types.INTEGER));
        } catch (RuntimeException | SQLException e) {
            errors.put("argument calls", message(e));
        }
        System.out.println(object("call", "sweep", "values", values, "errors", errors));
    }

    /** What DBeaver sets and reads on a fresh connection, each call on its own. */
    private static void connectionProperties(Connection c) {
        Map<String, Object> values = new TreeMap<>();
        Map<String, Object> errors = new TreeMap<>();
        Map<String, SqlCall> calls = new java.util.LinkedHashMap<>();
        calls.put("setAutoCommit(true)", () -> { c.setAutoCommit(true); return c.getAutoCommit(); });
        calls.put("setReadOnly(true)", () -> { c.setReadOnly(true); return c.isReadOnly(); });
        calls.put("getTransactionIsolation", c::getTransactionIsolation);
        calls.put("getCatalog", c::getCatalog);
        calls.put("getSchema", c::getSchema);
        calls.put("getHoldability", c::getHoldability);
        calls.put("isValid(5)", () -> c.isValid(5));
        calls.put("getClientInfo", () -> c.getClientInfo().size());
        for (Map.Entry<String, SqlCall> call : calls.entrySet()) {
            try {
                values.put(call.getKey(), call.getValue().call());
            } catch (SQLException | RuntimeException e) {
                errors.put(call.getKey(), message(e));
            }
        }
        System.out.println(object("call", "connection", "values", values, "errors", errors));
    }

    private interface SqlCall {
        Object call() throws SQLException;
    }

    private static int count(ResultSet rs) throws SQLException {
        try (rs) {
            int n = 0;
            while (rs.next()) {
                n++;
            }
            return n;
        }
    }

    /** Runs each statement as DBeaver's SQL editor does: execute, then the result set if there is one. */
    private static void query(Connection c, List<String> statements) throws SQLException {
        for (String sql : statements) {
            try (Statement statement = c.createStatement()) {
                if (!statement.execute(sql)) {
                    throw new SQLException("no result set for " + sql);
                }
                System.out.println(result(statement.getResultSet(), "sql", sql));
            }
        }
    }

    /**
     * Starts {@code sql}, reads its first row, cancels the statement (the grid's Cancel button), then
     * runs {@code followUp} on the same connection and reports how long it took: on a server with one
     * query slot, that measures whether the cancelled query let go of its slot.
     */
    private static void cancel(Connection c, String sql, String followUp) throws SQLException {
        Object first;
        try (Statement statement = c.createStatement()) {
            ResultSet rs = statement.executeQuery(sql);
            first = rs.next() ? rs.getObject(1) : null;
            statement.cancel();
        }
        long started = System.nanoTime();
        String error = null;
        Object rows = null;
        try (Statement statement = c.createStatement(); ResultSet rs = statement.executeQuery(followUp)) {
            List<Object> values = new ArrayList<>();
            while (rs.next()) {
                values.add(rs.getObject(1));
            }
            rows = values;
        } catch (SQLException e) {
            error = message(e);
        }
        long millis = (System.nanoTime() - started) / 1_000_000;
        System.out.println(object("first", first, "follow_up_rows", rows, "follow_up_error", error, "follow_up_ms", millis));
    }

    private static void prepared(Connection c, String sql, List<String> params) throws SQLException {
        try (PreparedStatement statement = c.prepareStatement(sql)) {
            ParameterMetaData parameters = statement.getParameterMetaData();
            List<Object> types = new ArrayList<>();
            for (int i = 1; i <= parameters.getParameterCount(); i++) {
                types.add(jdbcTypeName(parameters.getParameterType(i)));
            }
            for (String param : params) {
                bind(statement, param);
                try (ResultSet rs = statement.executeQuery()) {
                    System.out.println(result(rs, "sql", sql, "param", param, "parameter_types", types));
                }
            }
        }
    }

    private static void bind(PreparedStatement statement, String param) throws SQLException {
        String value = param.substring(param.indexOf(':') + 1);
        switch (param.substring(0, param.indexOf(':'))) {
            case "int" -> statement.setInt(1, Integer.parseInt(value));
            case "long" -> statement.setLong(1, Long.parseLong(value));
            case "double" -> statement.setDouble(1, Double.parseDouble(value));
            case "str" -> statement.setString(1, value);
            default -> throw new IllegalArgumentException("unknown parameter kind in " + param);
        }
    }

    private static void refused(Connection c, List<String> statements) {
        for (String sql : statements) {
            String error = null;
            try (Statement statement = c.createStatement()) {
                statement.execute(sql);
            } catch (SQLException | RuntimeException e) {
                error = message(e);
            }
            System.out.println(object("sql", sql, "error", error));
        }
    }

    private static void emit(String call, ResultSet rs) throws SQLException {
        System.out.println(result(rs, "call", call));
    }

    /** A result set as {"columns", "types", "rows"} plus the given leading fields. */
    private static String result(ResultSet rs, Object... leading) throws SQLException {
        try (rs) {
            ResultSetMetaData meta = rs.getMetaData();
            List<Object> columns = new ArrayList<>();
            List<Object> types = new ArrayList<>();
            for (int i = 1; i <= meta.getColumnCount(); i++) {
                columns.add(meta.getColumnLabel(i));
                types.add(jdbcTypeName(meta.getColumnType(i)));
            }
            List<Object> rows = new ArrayList<>();
            while (rs.next()) {
                List<Object> row = new ArrayList<>();
                for (int i = 1; i <= meta.getColumnCount(); i++) {
                    row.add(value(rs, i, meta.getColumnType(i)));
                }
                rows.add(row);
            }
            Object[] fields = Arrays.copyOf(leading, leading.length + 6);
            fields[leading.length] = "columns";
            fields[leading.length + 1] = columns;
            fields[leading.length + 2] = "types";
            fields[leading.length + 3] = types;
            fields[leading.length + 4] = "rows";
            fields[leading.length + 5] = rows;
            return object(fields);
        }
    }

    private static String jdbcTypeName(int type) {
        try {
            return java.sql.JDBCType.valueOf(type).getName();
        } catch (IllegalArgumentException e) {
            return String.valueOf(type);
        }
    }

    /** A cell as JSON renders it; timestamps as UTC ISO-8601 instants, as ADBC's are compared. */
    private static Object value(ResultSet rs, int column, int type) throws SQLException {
        if (type == Types.TIMESTAMP || type == Types.TIMESTAMP_WITH_TIMEZONE) {
            Timestamp timestamp = rs.getTimestamp(column, UTC);
            return timestamp == null ? null : timestamp.toInstant().toString();
        }
        return rs.getObject(column);
    }

    private static String message(Throwable e) {
        return e.getMessage() == null ? e.toString() : e.getMessage();
    }

    // A little JSON writer: the JDK has none, and the test needs no library beyond the driver.

    private static String object(Object... pairs) {
        StringBuilder out = new StringBuilder("{");
        for (int i = 0; i < pairs.length; i += 2) {
            out.append(i == 0 ? "" : ",").append(json(String.valueOf(pairs[i]))).append(':').append(json(pairs[i + 1]));
        }
        return out.append('}').toString();
    }

    private static String json(Object value) {
        if (value == null) {
            return "null";
        }
        if (value instanceof Boolean || value instanceof Integer || value instanceof Long || value instanceof Short
                || value instanceof Byte || value instanceof java.math.BigInteger || value instanceof java.math.BigDecimal) {
            return value.toString();
        }
        if (value instanceof Double || value instanceof Float) {
            double d = ((Number) value).doubleValue();
            return Double.isFinite(d) ? value.toString() : json(value.toString());
        }
        if (value instanceof byte[] bytes) {
            return quote(java.util.HexFormat.of().formatHex(bytes));
        }
        if (value instanceof Map<?, ?> map) {
            StringBuilder out = new StringBuilder("{");
            for (Map.Entry<?, ?> entry : map.entrySet()) {
                out.append(out.length() == 1 ? "" : ",").append(json(String.valueOf(entry.getKey()))).append(':').append(json(entry.getValue()));
            }
            return out.append('}').toString();
        }
        if (value instanceof List<?> list) {
            StringBuilder out = new StringBuilder("[");
            for (Object item : list) {
                out.append(out.length() == 1 ? "" : ",").append(json(item));
            }
            return out.append(']').toString();
        }
        return quote(value.toString());
    }

    private static String quote(String text) {
        StringBuilder out = new StringBuilder("\"");
        for (char ch : text.toCharArray()) {
            switch (ch) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                case '\n' -> out.append("\\n");
                case '\r' -> out.append("\\r");
                case '\t' -> out.append("\\t");
                default -> out.append(ch < 0x20 ? String.format("\\u%04x", (int) ch) : String.valueOf(ch));
            }
        }
        return out.append('"').toString();
    }
}
